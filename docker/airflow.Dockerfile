# The compose stack's Airflow: the Airflow image with the Docker provider baked in, so a
# start installs nothing. AIRFLOW_BASE_IMAGE is the official image unless a local
# stand-in is named (scripts/stand-in-images.sh). A CA bundle for pip may be handed in as
# the BuildKit secret `ca` (where a package mirror presents its own certificate); it never
# lands in a layer.
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
# hadolint ignore=DL3006
FROM ${AIRFLOW_BASE_IMAGE}
RUN --mount=type=secret,id=ca,uid=50000 \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-cache-dir -q apache-airflow-providers-docker==4.6.1
COPY --chmod=0755 airflow-entrypoint.sh /usr/local/bin/ota-airflow-entrypoint
# The entrypoint starts as root to join the Docker socket's group, then runs Airflow as
# the airflow user (docker/airflow-entrypoint.sh).
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/local/bin/ota-airflow-entrypoint"]
