"""The `ha` tests: the Sentinel topology as local pods, each with its own address."""
