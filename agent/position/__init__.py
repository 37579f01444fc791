"""Where the kiosk is: a GNSS receiver's fix, recorded with every registration (docs/vans.md)."""
