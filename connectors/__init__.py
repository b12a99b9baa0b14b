"""Everything that reads or writes the outside world: Kafka, recording files, replay."""
