"""Code the tests share: fixtures' helpers, emulator clients, certificates, checkers."""
