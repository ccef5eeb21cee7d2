"""python-dbusmock templates used by the sandbox's private bus."""
