"""``DataError``: the shards or the data settings are unusable as given (empty or unreadable shards, a
source with no usable sample, too many bad samples). A ``ValueError``, so the trainer reports it as one
line naming the shard(s) and the fix, like any other setting the user has to change."""


class DataError(ValueError):
    """Unusable data; the message names the shard(s) or setting and what to do about it."""
