# A stand-in for mysql:8.4 where no image registry is reachable: Debian's MariaDB with
# the official image's environment contract (MYSQL_DATABASE, MYSQL_USER, MYSQL_PASSWORD,
# MYSQL_ROOT_PASSWORD, the passwords also as *_FILE; extra server flags as the command). Built by
# scripts/stand-in-images.sh.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends mariadb-server \
    && rm -rf /var/lib/apt/lists/* \
    && rm -rf /var/lib/mysql \
    && mkdir -p /run/mysqld /var/lib/mysql && chown mysql:mysql /run/mysqld /var/lib/mysql
COPY mysql-entrypoint.sh /usr/local/bin/mysql-entrypoint.sh
VOLUME /var/lib/mysql
EXPOSE 3306
ENTRYPOINT ["/usr/local/bin/mysql-entrypoint.sh"]
CMD []
