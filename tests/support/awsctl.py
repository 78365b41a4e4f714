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
  harden-fully BUCKET KEY_ARN          also logging, lifecycle, object lock, rotation, account BPA
  misconfigure BUCKET CHECK [KEY_ARN]  break exactly one hardening check
  account-pab on|off                   the account's Block Public Access
  versions BUCKET                      count of object versions and delete markers
  put-policy BUCKET FILE / get-policy BUCKET
  put-lifecycle BUCKET RULES_JSON / get-lifecycle BUCKET
  sns-queue NAME                       an SNS topic with an SQS queue subscribed
  receive QUEUE_URL [WAIT]             messages delivered to the queue
  stats BUCKET                         the test server's GET bytes and restore requests for BUCKET
  restore-delay BUCKET SECS            Glacier restores in BUCKET take SECS seconds
  object-versions BUCKET               current version id of every object
  retention BUCKET KEY                 an object's Object Lock retention (mode, until, until_epoch)
"""

import json
import sys

import boto3

REGION = "us-east-1"


def client(service):
    c = boto3.client(service, region_name=REGION)
    if service == "s3control":
        # S3 Control puts the account id in front of the host name, which
        # the test server's address (an IP) cannot take: take it off again.
        import re

        def strip_account(request, **_):
            request.url = re.sub(r"^https://\d{12}\.", "https://", request.url)

        c.meta.events.register("before-sign.s3-control", strip_account)
    return c


def tls_only_policy(name):
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def create_bucket(name, *flags):  # noqa: C901
    """A bucket as vaultline requires it (versioning, Block Public Access,
    ACLs disabled, default encryption, TLS-only policy), or with --bare only
    versioning-less defaults, for the hardening tests to misconfigure."""
    s3 = client("s3")
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket="--object-lock" in flags)
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


ARCHIVE_RULE = {
    "ID": "archive",
    "Status": "Enabled",
    "Filter": {"Tag": {"Key": "vaultline-tier", "Value": "archive"}},
    "Transitions": [{"Days": 30, "StorageClass": "DEEP_ARCHIVE"}],
}
ABORT_RULE = {
    "ID": "abort-uploads",
    "Status": "Enabled",
    "Filter": {"Prefix": ""},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
}


def harden_fully(name, key_arn):
    """Everything the checks look at, compliant: also logging, lifecycle,
    object lock retention, key rotation and the account's Block Public
    Access. The bucket must have been made with --object-lock."""
    s3 = client("s3")
    logs = f"{name}-logs"
    s3.create_bucket(Bucket=logs)
    s3.put_bucket_policy(
        Bucket=logs,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "S3ServerAccessLogs",
                        "Effect": "Allow",
                        "Principal": {"Service": "logging.s3.amazonaws.com"},
                        "Action": ["s3:PutObject"],
                        "Resource": f"arn:aws:s3:::{logs}/*",
                    }
                ],
            }
        ),
    )
    s3.put_bucket_logging(
        Bucket=name,
        BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": logs, "TargetPrefix": f"{name}/"}},
    )
    s3.put_bucket_lifecycle_configuration(
        Bucket=name, LifecycleConfiguration={"Rules": [ARCHIVE_RULE, ABORT_RULE]}
    )
    s3.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    client("kms").enable_key_rotation(KeyId=key_arn.split("/")[-1])
    account_pab("on")
    return {"bucket": name, "log_bucket": logs}


def account_pab(state):
    control = client("s3control")
    account = client("sts").get_caller_identity()["Account"]
    if state == "on":
        control.put_public_access_block(
            AccountId=account,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
    else:
        control.delete_public_access_block(AccountId=account)
    return {"account": account, "public_access_block": state}


def set_pab(s3, name, on):
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": on,
            "IgnorePublicAcls": on,
            "BlockPublicPolicy": on,
            "RestrictPublicBuckets": on,
        },
    )


def misconfigure(name, check, key_arn=""):
    """Breaks exactly one check of a fully hardened bucket."""
    s3 = client("s3")
    policy = {"Version": "2012-10-17", "Statement": [tls_only_policy(name)]}
    if check == "public-access-block":
        s3.delete_public_access_block(Bucket=name)
    elif check == "no-public-policy":
        set_pab(s3, name, False)
        policy["Statement"].append(
            {
                "Sid": "PublicRead",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{name}/*",
            }
        )
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
        set_pab(s3, name, True)
    elif check == "acls-disabled":
        set_pab(s3, name, False)
        s3.put_bucket_ownership_controls(
            Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerPreferred"}]}
        )
        s3.put_bucket_acl(Bucket=name, ACL="public-read")
        set_pab(s3, name, True)
    elif check == "versioning":
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
    elif check == "default-encryption":
        s3.delete_bucket_encryption(Bucket=name)
    elif check == "tls-only":
        # A policy that lets http through: the Deny covers objects only.
        st = tls_only_policy(name)
        st["Resource"] = f"arn:aws:s3:::{name}/*"
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [st]}))
    elif check == "access-logging":
        s3.put_bucket_logging(Bucket=name, BucketLoggingStatus={})
    elif check == "lifecycle-archive":
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [ABORT_RULE]})
    elif check == "lifecycle-abort-mpu":
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [ARCHIVE_RULE]})
    elif check == "lifecycle-no-early-expiry":
        expire = {
            "ID": "expire-everything",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "Expiration": {"Days": 365},
        }
        s3.put_bucket_lifecycle_configuration(
            Bucket=name, LifecycleConfiguration={"Rules": [ARCHIVE_RULE, ABORT_RULE, expire]}
        )
    elif check == "object-lock":
        s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
    elif check == "kms-key":
        client("kms").disable_key_rotation(KeyId=key_arn.split("/")[-1])
    elif check == "account-public-access-block":
        account_pab("off")
    else:
        raise SystemExit(f"unknown check {check}")
    return {"misconfigured": check}


def versions(name):
    s3 = client("s3")
    n = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        n += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    return {"versions": n}


def put_policy(name, path):
    with open(path) as f:
        client("s3").put_bucket_policy(Bucket=name, Policy=f.read())
    return {"ok": True}


def get_policy(name):
    return json.loads(client("s3").get_bucket_policy(Bucket=name)["Policy"])


def put_lifecycle(name, rules_json):
    client("s3").put_bucket_lifecycle_configuration(
        Bucket=name, LifecycleConfiguration={"Rules": json.loads(rules_json)}
    )
    return {"ok": True}


def get_lifecycle(name):
    return client("s3").get_bucket_lifecycle_configuration(Bucket=name)["Rules"]


def sns_queue(name):
    """An SNS topic with an SQS queue subscribed, to see what was published."""
    sns, sqs = client("sns"), client("sqs")
    topic = sns.create_topic(Name=name)["TopicArn"]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return {"topic": topic, "queue_url": url}


def receive(url, wait="10"):
    """Messages delivered to the queue (SNS envelopes), waiting up to WAIT s."""
    r = client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=int(wait))
    return [json.loads(m["Body"]) for m in r.get("Messages", [])]


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
        try:
            tags = s3.get_object_tagging(Bucket=bucket, Key=o["Key"])["TagSet"]
        except s3.exceptions.ClientError:
            tags = []  # the test server refuses tagging reads of GLACIER objects
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


def control(path, **query):
    """The test server's own controls (tests/support/moto_server.py)."""
    import os
    import ssl
    import urllib.parse
    import urllib.request

    ctx = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
    url = os.environ["AWS_ENDPOINT_URL"].rstrip("/") + path + "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, context=ctx) as r:
        return json.loads(r.read())


def stats(bucket):
    return control("/__vaultline/stats", bucket=bucket)


def restore_delay(bucket, secs):
    return control("/__vaultline/restore-delay", bucket=bucket, secs=secs)


def object_versions(bucket):
    s3 = client("s3")
    return {o["Key"]: s3.head_object(Bucket=bucket, Key=o["Key"]).get("VersionId") for o in all_objects(s3, bucket)}


def retention(bucket, key):
    # From HEAD: the test server has no GetObjectRetention.
    head = client("s3").head_object(Bucket=bucket, Key=key)
    until = head.get("ObjectLockRetainUntilDate")
    return {
        "mode": head.get("ObjectLockMode"),
        "until": until.isoformat() if until else None,
        "until_epoch": int(until.timestamp()) if until else None,
    }


COMMANDS = {
    "stats": stats,
    "restore-delay": restore_delay,
    "object-versions": object_versions,
    "retention": retention,
    "create-bucket": create_bucket,
    "create-key": create_key,
    "disable-key": disable_key,
    "objects": objects,
    "scan": scan,
    "uploads": uploads,
    "get": get,
    "put": put,
    "iam-user": iam_user,
    "harden-fully": harden_fully,
    "account-pab": account_pab,
    "misconfigure": misconfigure,
    "versions": versions,
    "put-policy": put_policy,
    "get-policy": get_policy,
    "put-lifecycle": put_lifecycle,
    "get-lifecycle": get_lifecycle,
    "sns-queue": sns_queue,
    "receive": receive,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
