# regcache: multi-stage build. `docker compose up -d` builds it; where no base image can be
# pulled, scripts/docker-image.sh packages a locally built binary instead (same layout).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/regcache

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/regcache --shell /usr/sbin/nologin regcache \
 && mkdir -p /var/lib/regcache/certs /var/lib/regcache/cache /etc/regcache \
 && chown -R regcache:regcache /var/lib/regcache
COPY --from=build /src/target/release/regcache /usr/local/bin/regcache
# Ports 53 and 443 without root: the binary carries only the capability to bind them.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/regcache \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
USER regcache
WORKDIR /var/lib/regcache
EXPOSE 53/udp 53/tcp 443/tcp 9090/tcp
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/local/bin/regcache", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/regcache"]
CMD ["serve"]
