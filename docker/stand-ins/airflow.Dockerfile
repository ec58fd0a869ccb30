# A stand-in for apache/airflow:3.3.2-python3.11 where no image registry is reachable:
# Debian's Python 3.11 and Airflow from PyPI, laid out as the official image is (user
# airflow, uid 50000, gid 0; AIRFLOW_HOME=/opt/airflow; airflow on PATH). Built by
# scripts/stand-in-images.sh; the CA bundle pip trusts here is handed in as a BuildKit
# secret (id=ca) and never lands in a layer.
FROM debian:bookworm-slim
ARG AIRFLOW_VERSION=3.3.2
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow \
    && mkdir -p /opt/airflow && chown 50000:0 /opt/airflow
ENV AIRFLOW_HOME=/opt/airflow \
    PATH=/home/airflow/.local/bin:$PATH
USER 50000
RUN --mount=type=secret,id=ca,uid=50000 \
    python3 -m venv /home/airflow/.local \
    && PIP_CERT=/run/secrets/ca /home/airflow/.local/bin/pip install --no-cache-dir -q \
       "apache-airflow==${AIRFLOW_VERSION}"
WORKDIR /opt/airflow
EXPOSE 8080
CMD ["airflow", "version"]
