"""Standard formats a registration leaves the kiosk in (docs/formats.md).

- ``images``: fingerprints as PNG (lossless, 8-bit grey, pHYs) or WSQ, at native resolution;
- ``iso19794_4``: the ISO/IEC 19794-4:2005 finger image record, writer and reader;
- ``ansi_nist``: one ANSI/NIST-ITL 1-2011 transaction per registration (Type-1, 2, 14, 10).
"""
