"""Prints what an EC2 API still holds of one Kubeforge cluster, one
`kind id` line per resource: instances that are not terminated, security
groups and volumes tagged `kubeforge:cluster=<id>`. Nothing printed:
nothing left.

    ec2_leftovers.py ENDPOINT REGION CLUSTER_ID
"""
import sys

import boto3

endpoint, region, cluster = sys.argv[1:4]
ec2 = boto3.client(
    "ec2",
    endpoint_url=endpoint,
    region_name=region,
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
)
tagged = [{"Name": "tag:kubeforge:cluster", "Values": [cluster]}]
for page in ec2.get_paginator("describe_instances").paginate(Filters=tagged):
    for reservation in page["Reservations"]:
        for instance in reservation["Instances"]:
            if instance["State"]["Name"] != "terminated":
                print("instance", instance["InstanceId"], instance["State"]["Name"])
for group in ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]:
    print("security-group", group["GroupId"])
for volume in ec2.describe_volumes(Filters=tagged)["Volumes"]:
    print("volume", volume["VolumeId"], volume["State"])
