"""moec.backends.ort."""
