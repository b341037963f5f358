"""SCALE-Sim v3 as an external reference for moec's compute model (``moec validate compute``)."""
