"""moec.ir.stream."""
