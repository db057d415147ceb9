# Sourced by the outgoing benchmarks: the one-node palisade-outgoing config
# they measure. outgoing_toml DATA_DIR DNS_ADDR > FILE
# queue.concurrency = per_domain_concurrency = 20, like Postfix's
# default_destination_concurrency_limit; MX hosts on port 2626 (the sink).
outgoing_toml() {
  cat <<TOML
[gateway]
hostname = "bench.example.test"
data_dir = "$1"
dns = "$2"

[[domain]]
name = "example.test"

[stage.outgoing]
accept_from = ["127.0.0.1"]
[stage.outgoing.limits]
max_sessions = 1000
[stage.outgoing.queue]
concurrency = 20
[stage.outgoing.outbound]
smtp_port = 2626
mta_sts = false
per_domain_concurrency = 20
[stage.outgoing.outbound.dane]
enabled = false   # unsigned bench zones (dnsmasq), like Postfix's default "may"

[node.outgoing-1]
stage = "outgoing"
smtp = "127.0.0.1:2531"
metrics = "127.0.0.1:9191"
TOML
}
