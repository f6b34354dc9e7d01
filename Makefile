# The two commands of the README, plus the checks CI runs.
.PHONY: deps demo test check bench

deps:
	@bash scripts/install-deps.sh

demo: deps
	cargo run --release -- --demo

test: deps
	cargo test --release

check: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench: deps
	cargo bench --bench router
	cargo bench --bench jwt
	cargo bench --bench ratelimit
	cargo bench --bench ratelimit_accuracy
