# Two commands for a newcomer on a fresh machine:
#   make         set up the virtualenv and render the dev stack offline into rendered/dev
#   make test    also install redis-server and the test tools, build the pinned Pulumi CLI,
#                provider and Kubernetes control plane (cached outside the repository), then
#                run the whole test suite
#   make lint    install ruff (the version the tests pin) if missing, then lint and check format
STACK ?= dev

.PHONY: render test lint settings
render:
	scripts/bootstrap.sh
	mkdir -p rendered
	.venv/bin/python -m brokerctl render --stack $(STACK) --out rendered/$(STACK)

settings:
	scripts/bootstrap.sh
	.venv/bin/python -m brokerctl settings --stack $(STACK)

test:
	scripts/bootstrap.sh --test
	scripts/toolchain.sh
	.venv/bin/python -m pytest -q

lint:
	scripts/bootstrap.sh --lint
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
