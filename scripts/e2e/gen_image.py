#!/usr/bin/env python3
"""Generate a test image as an OCI image layout, plus a push plan for e2e.sh.

Writes OUT/oci-layout, OUT/index.json and OUT/blobs/sha256/<hex> (layers, configs, manifests),
and OUT/push-plan with one line per upload, in push order:
    blob <digest>
    manifest <digest> <media-type>          (a per-platform manifest, pushed by digest)
    tag <tag> <digest> <media-type>         (the top-level manifest, pushed by tag)
Prints the top-level manifest digest on stdout.

Layers are gzip'd tars holding random bytes, so every run produces new digests.
  --format docker  -> schema2 manifests (application/vnd.docker.distribution.manifest.v2+json)
  --format oci     -> OCI manifests
More than one --platform produces an index (OCI index, or a Docker manifest list with --format
docker) over one image per platform; the first platform gets the --layer-mib sizes, the others one
1 MiB layer each.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

MT = {
    "docker": {
        "manifest": "application/vnd.docker.distribution.manifest.v2+json",
        "config": "application/vnd.docker.container.image.v1+json",
        "layer": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "index": "application/vnd.docker.distribution.manifest.list.v2+json",
    },
    "oci": {
        "manifest": "application/vnd.oci.image.manifest.v1+json",
        "config": "application/vnd.oci.image.config.v1+json",
        "layer": "application/vnd.oci.image.layer.v1.tar+gzip",
        "index": "application/vnd.oci.image.index.v1+json",
    },
}
CREATED = "2025-01-01T00:00:00Z"


class Layout:
    def __init__(self, out):
        self.out = out
        self.plan = []
        os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)

    def put(self, data):
        hexd = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.out, "blobs", "sha256", hexd), "wb") as f:
            f.write(data)
        return "sha256:" + hexd

    def blob(self, data, media_type):
        digest = self.put(data)
        self.plan.append(f"blob {digest}")
        return {"mediaType": media_type, "digest": digest, "size": len(data)}


def make_layer(name, index, mib):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(path, data):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1735689600
            tar.addfile(info, io.BytesIO(data))
        add(f"etc/e2e-{index}.txt", f"{name} layer {index}\n".encode())
        add(f"e2e/random-{index}.bin", os.urandom(int(mib * 1024 * 1024)))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def make_image(lay, fmt, name, platform, sizes):
    os_, arch, *variant = platform.split("/")
    layers, diff_ids = [], []
    for i, mib in enumerate(sizes):
        gz, diff_id = make_layer(name, i, mib)
        layers.append(lay.blob(gz, MT[fmt]["layer"]))
        diff_ids.append(diff_id)
    config = {
        "architecture": arch, "os": os_, "created": CREATED,
        "config": {"Cmd": ["/bin/true"], "Labels": {"e2e.image": name}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": f"e2e layer {i}"} for i in range(len(sizes))],
    }
    if variant:
        config["variant"] = variant[0]
    cfg = lay.blob(json.dumps(config, indent=2).encode(), MT[fmt]["config"])
    manifest = {"schemaVersion": 2, "mediaType": MT[fmt]["manifest"], "config": cfg, "layers": layers}
    data = json.dumps(manifest, indent=3).encode()
    desc = {"mediaType": MT[fmt]["manifest"], "digest": lay.put(data), "size": len(data)}
    plat = {"architecture": arch, "os": os_}
    if variant:
        plat["variant"] = variant[0]
    return desc, plat


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--name", required=True, help="image name, written into the layers and config")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--format", choices=["docker", "oci"], default="docker")
    ap.add_argument("--layer-mib", type=float, action="append", default=[])
    ap.add_argument("--platform", action="append", default=[])
    a = ap.parse_args()
    sizes = a.layer_mib or [1.0]
    platforms = a.platform or ["linux/amd64"]
    lay = Layout(a.out)
    descs = []
    for n, platform in enumerate(platforms):
        desc, plat = make_image(lay, a.format, a.name, platform, sizes if n == 0 else [1.0])
        descs.append((desc, plat))
    if len(descs) == 1:
        top = descs[0][0]
    else:
        for desc, _ in descs:
            lay.plan.append(f"manifest {desc['digest']} {desc['mediaType']}")
        index = {"schemaVersion": 2, "mediaType": MT[a.format]["index"],
                 "manifests": [dict(d, platform=p) for d, p in descs]}
        data = json.dumps(index, indent=3).encode()
        top = {"mediaType": MT[a.format]["index"], "digest": lay.put(data), "size": len(data)}
    lay.plan.append(f"tag {a.tag} {top['digest']} {top['mediaType']}")
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(a.out, "index.json"), "w") as f:
        ref = dict(top, annotations={"org.opencontainers.image.ref.name": a.tag})
        json.dump({"schemaVersion": 2, "manifests": [ref]}, f, indent=2)
    with open(os.path.join(a.out, "push-plan"), "w") as f:
        f.write("\n".join(lay.plan) + "\n")
    print(top["digest"])


if __name__ == "__main__":
    sys.exit(main())
