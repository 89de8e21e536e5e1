"""XML signatures (XML-DSig with the SMEV transform, GOST R 34.10-2012, RSA) and key and trust stores."""
