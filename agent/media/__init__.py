"""Registrations carried on removable media (mobile vans): export, central import, receipts.

docs/vans.md describes the drive's layout and the three commands.
"""
