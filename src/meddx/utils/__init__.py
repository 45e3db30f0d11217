"""Small shared helpers (atomic files, seeding, device choice)."""
