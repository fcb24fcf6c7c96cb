"""Session fixtures for the real local services: Kafka (KRaft), redis-server, tritonserver."""
