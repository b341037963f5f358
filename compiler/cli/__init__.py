"""moec.compiler.cli."""
