# syntax=docker/dockerfile:1
# pgfleet container image: build with Rust 1.95 on Debian bookworm, run on bookworm-slim as a non-root user.
#   docker build -t pgfleet .
#   docker run -p 6432:6432 -v ./pgfleet.toml:/etc/pgfleet/pgfleet.toml:ro pgfleet
# The config must listen on 0.0.0.0:6432 (or the container's address) to be reachable from outside.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# scripts/build.sh: the release build with the committed execution profile (pgo/), as the demo and bench/ use.
RUN bash scripts/build.sh build --release --locked --bin pgfleet \
    && install -m 0755 target/release/pgfleet /usr/local/bin/pgfleet

FROM debian:bookworm-slim
# ca-certificates: TLS towards the nodes. postgresql-client: pg_isready for the HEALTHCHECK, and pg_dump for
# replication.mode = "forward" (its initial copy restores the schema with pg_dump).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 pgfleet \
    && useradd --uid 10001 --gid pgfleet --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pgfleet \
    && mkdir -p /etc/pgfleet
COPY --from=build /usr/local/bin/pgfleet /usr/local/bin/pgfleet
# A default config (the docker-compose example's); mount your own over it.
COPY docker/pgfleet.toml /etc/pgfleet/pgfleet.toml
USER pgfleet:pgfleet
EXPOSE 6432
# pgfleet stops on SIGINT or SIGTERM; SIGINT is what an interactive Ctrl-C sends, so `docker stop` matches it.
STOPSIGNAL SIGINT
# Healthy while pgfleet accepts PostgreSQL connections (any answer to a startup packet counts, even a refusal).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "6432", "-U", "pgfleet_healthcheck", "-d", "postgres"]
ENTRYPOINT ["pgfleet"]
CMD ["--config", "/etc/pgfleet/pgfleet.toml"]
