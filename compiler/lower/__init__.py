"""moec.compiler.lower."""
