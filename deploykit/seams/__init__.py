"""The seams to the outside, one each: the Docker Engine, processes, HTTP, the stack folder and other files."""
