#!/usr/bin/env python3
"""Test fixtures and independent inspection for the S3 + KMS suites, with
boto3 (not vaultline's own client). Endpoint, CA bundle and credentials come
from the environment (AWS_ENDPOINT_URL, AWS_CA_BUNDLE, AWS_ACCESS_KEY_ID, ...).
Every command prints JSON on stdout.

  create-bucket NAME [--bare]          a hardened bucket (or a bare one)
  create-key                           a symmetric KMS key: {"arn": ...}
  disable-key ARN
  objects BUCKET                       every object: key, size, storage class, tags
  scan BUCKET MARKER...                which objects' bytes contain which markers
  uploads BUCKET                       in-progress multipart uploads
  get BUCKET KEY FILE                  download an object
  put BUCKET KEY FILE                  upload an object (replacing it)
  iam-user NAME POLICY_FILE            an IAM user with this inline policy: {"key", "secret"}
"""

import json
import sys

import boto3

REGION = "us-east-1"


def client(service):
    return boto3.client(service, region_name=REGION)


def tls_only_policy(name):
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def create_bucket(name, *flags):
    """A bucket as vaultline requires it (versioning, Block Public Access,
    ACLs disabled, default encryption, TLS-only policy), or with --bare only
    versioning-less defaults, for the hardening tests to misconfigure."""
    s3 = client("s3")
    s3.create_bucket(Bucket=name)
    if "--bare" in flags:
        return {"bucket": name}
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_ownership_controls(
        Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    )
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]
        },
    )
    s3.put_bucket_policy(
        Bucket=name,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [tls_only_policy(name)]}),
    )
    return {"bucket": name}


def create_key():
    kms = client("kms")
    meta = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    return {"arn": meta["Arn"], "id": meta["KeyId"]}


def disable_key(arn):
    client("kms").disable_key(KeyId=arn.split("/")[-1])
    return {"disabled": arn}


def all_objects(s3, bucket):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend(page.get("Contents", []))
    return out


def objects(bucket):
    s3 = client("s3")
    out = []
    for o in all_objects(s3, bucket):
        head = s3.head_object(Bucket=bucket, Key=o["Key"])
        tags = s3.get_object_tagging(Bucket=bucket, Key=o["Key"])["TagSet"]
        out.append(
            {
                "key": o["Key"],
                "size": o["Size"],
                "storage_class": head.get("StorageClass", "STANDARD"),
                "tags": {t["Key"]: t["Value"] for t in tags},
            }
        )
    return out


def scan(bucket, *markers):
    s3 = client("s3")
    found = []
    wanted = [m.encode() for m in markers]
    for o in all_objects(s3, bucket):
        body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for m in wanted:
            if m in body:
                found.append({"key": o["Key"], "marker": m.decode()})
    return {"objects": len(all_objects(s3, bucket)), "found": found}


def uploads(bucket):
    r = client("s3").list_multipart_uploads(Bucket=bucket)
    return [{"key": u["Key"], "upload_id": u["UploadId"]} for u in r.get("Uploads", [])]


def get(bucket, key, path):
    client("s3").download_file(bucket, key, path)
    return {"ok": True}


def put(bucket, key, path):
    with open(path, "rb") as f:
        client("s3").put_object(Bucket=bucket, Key=key, Body=f.read())
    return {"ok": True}


def iam_user(name, policy_file):
    iam = client("iam")
    iam.create_user(UserName=name)
    with open(policy_file) as f:
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=f.read())
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return {"key": k["AccessKeyId"], "secret": k["SecretAccessKey"]}


COMMANDS = {
    "create-bucket": create_bucket,
    "create-key": create_key,
    "disable-key": disable_key,
    "objects": objects,
    "scan": scan,
    "uploads": uploads,
    "get": get,
    "put": put,
    "iam-user": iam_user,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
