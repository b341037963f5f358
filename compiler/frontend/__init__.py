"""moec.compiler.frontend."""
