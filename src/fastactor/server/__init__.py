"""``fastactor serve``: the supervisor, the shard workers, their HTTP front and channels."""
