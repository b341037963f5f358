"""moec.compiler.passes."""
