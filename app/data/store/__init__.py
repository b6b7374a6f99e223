"""Prepared data in object storage: the S3 client (``client``) and the training mirror of its small files (``mirror``).

The upload protocol is ``sprout.data.prepare.publish``; the chunks are downloaded as training reads
them by ``sprout.data.cache``.
"""
