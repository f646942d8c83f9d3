"""tsol.dist: Mesh, ShardSpec, sharded tensors and collectives (in progress)."""
