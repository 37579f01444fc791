"""Whether the kiosk's clock can be believed (docs/vans.md, "The clock")."""
