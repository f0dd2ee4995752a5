"""Active health checks from a load-balancer node (docs/HEALTH.md): what to check
(targets.py), the probes (probe.py), and the checker that runs them and reports what it sees
(checker.py). The controller decides from every LB node's reports."""
