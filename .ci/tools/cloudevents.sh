#!/usr/bin/env bash
# Installs the official CloudEvents SDK for Python, with confluent-kafka (its
# wheel bundles a recent librdkafka; Debian's python3-confluent-kafka links
# 1.9) to read messages back, into target/tools/cloudevents, without root. Prints the
# environment's directory. tests/brokers/cloudevents.rs looks for it there.
set -euo pipefail
exec bash "$(dirname "$0")/venv.sh" cloudevents cloudevents==2.2.0 confluent-kafka==2.16.1
