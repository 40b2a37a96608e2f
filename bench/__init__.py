"""slmforge's benchmarks: `make bench` (python -m bench) writes bench/results.json and the table in bench/README.md."""
