"""Wire-level emulators of UART fingerprint modules, for tests and manual checks (not shipped).

Each speaks the device side of its protocol over a pty, byte for byte, with fault controls;
``python -m tests.emulators.zfm`` / ``python -m tests.emulators.gt521f`` run one standalone
and print the pty's path as the first line of stdout.
"""
