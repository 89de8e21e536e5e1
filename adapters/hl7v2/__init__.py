"""HL7 v2: the MLLP listener, ACKs, and the mapping of a laboratory's messages to lab results."""
