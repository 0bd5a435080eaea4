"""slime plugin: the multi-turn tool-calling generate function and its parts."""
