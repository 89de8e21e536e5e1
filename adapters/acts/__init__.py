"""Service acts: a period's service records per organisation and insurer, as the OMS register the insurer takes.

``builder`` makes the H-file and L-file in the insurer's edition and region, ``archive`` packs and
signs them, ``runner`` sends each register once (or writes it, ``--out``), ``schedule`` does so
monthly, and ``protocol_file`` takes in a ФЛК protocol an insurer left as a file. The file format
itself (names, ZIP, layouts, profiles, checks, protocols) is ``gateway.oms``.
"""
