"""`quiver trace ID|ADDRESS`: every event of a message or a recipient, in order, with a
verdict per recipient.

Events come from one of two readers behind `EventReader` (`reader.py`): a listing of
the events bucket bounded by the key layout's date and hour partitions (`s3_reader`,
for the local stack and small deployments), or Athena over the Glue table
(`athena`). The finals table adds what the export claimed (`claims`); `verdict`
orders the events and says what became of each recipient; `command` is the CLI.
"""
