#!/usr/bin/env python3
"""Reset the root/Administrator password of every server in a dev fleet with
the official Huawei Cloud Python SDK (unmodified).

    .venv/bin/python examples/reset_fleet.py ecsd-data/dev-credentials.json

The password is read from a prompt (twice, not echoed) or, when standard input
is not a terminal, from its first line. It is never a command-line argument.
"""

import getpass
import json
import sys

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    BatchResetServersPasswordRequest,
    BatchResetServersPasswordRequestBody,
    EcsClient,
    ServerId,
)


def main():
    creds = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "ecsd-data/dev-credentials.json"))
    if sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            sys.exit("The passwords differ.")
    else:
        password = sys.stdin.readline().rstrip("\n")
    # `ecsd serve --dev` serves HTTPS with its own CA, named in the credentials file.
    http_config = HttpConfig.get_default_config()
    if creds.get("ca_file"):
        http_config.ssl_ca_cert = creds["ca_file"]
    client = (EcsClient.new_builder()
              .with_credentials(BasicCredentials(creds["ak"], creds["sk"], creds["project_id"]))
              .with_http_config(http_config)
              .with_endpoints([creds["endpoint"]])
              .build())
    servers = [ServerId(id=s["id"]) for s in creds["servers"]]
    try:
        for dry_run in (True, False):
            body = BatchResetServersPasswordRequestBody(new_password=password, dry_run=dry_run, servers=servers)
            resp = client.batch_reset_servers_password(BatchResetServersPasswordRequest(body=body))
            word = "dry run passed for" if dry_run else "reset accepted for"
            print(f"{word} {len(resp.response)} servers")
    except ClientRequestException as e:
        sys.exit(f"{e.status_code} {e.error_code}: {e.error_msg} (request {e.request_id})")
    print("The new password applies when each server starts or restarts.")


if __name__ == "__main__":
    main()
