"""Where data comes from and goes to: object storage (:mod:`.storage`), the input's shards
(:mod:`.shards`), reading them into rows (:mod:`.readers`), keys repeated across shards
(:mod:`.keys`), the output's layout (:mod:`.layout`), and a local S3 server (:mod:`.local_s3`)."""
