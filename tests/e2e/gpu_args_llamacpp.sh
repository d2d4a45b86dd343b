#!/usr/bin/env bash
# Runs INSIDE the llama.cpp image (tests/e2e/test_gpu_args.py starts it with this file and the batch
# bind-mounted read-only): llama-server's own argument handling for every command line in the batch.
#
#   gpu_args_llamacpp.sh BATCH_DIR
#
# BATCH_DIR holds one file per check, NAME.args: NUL-separated words, given to env(1) as they are —
# the service's NAME=VALUE environment first, then the image's entrypoint and the rendered command. So
# each server runs with exactly the argv and environment the stack would give it. The model path the
# command names does not exist here: a server that got past argument parsing stops at loading the model.
#
# Prints the version, the --help text (it names the environment variable of each flag), then for each
# check its output between "@@deploykit-gpuargs-llamacpp@@ begin NAME" and "... end NAME RC".
set -u
mark=@@deploykit-gpuargs-llamacpp@@
echo "$mark version"
llama-server --version 2>&1
echo "$mark help"
llama-server --help 2>&1
for file in "$1"/*.args; do
    name=$(basename "$file" .args)
    mapfile -d '' -t words < "$file"
    echo "$mark begin $name"
    # timeout: a server must never wait here (it would if the model path existed and it started to serve)
    timeout 60 env "${words[@]}" 2>&1 < /dev/null
    code=$?
    echo  # the server's last line may not end in a newline; the mark must start a line
    echo "$mark end $name $code"
done
