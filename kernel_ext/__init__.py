"""osm: research-to-live FX trading from a notebook. `%load_ext osm` to start."""

__version__ = "0.1.0"
