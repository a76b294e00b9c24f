"""The live runtime: bus, feeders, router, trader, brains, supervisor and the `osm` command line."""
