"""Scale-out over Kafka: the record format, the mirror tap, fleet takedowns and the faust worker."""
