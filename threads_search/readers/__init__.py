"""Input formats users already have (patch features, profiles, metadata), read into typed objects."""
