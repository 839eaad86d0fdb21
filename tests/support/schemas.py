"""Field names of the external formats the examples are written in, as their Go types declare
them (the `yaml:`/`json:` tags), so a misspelt or invented field fails a test instead of being
silently dropped by the real controller. Each map: type -> {field: type of its value, or None for
a leaf or a free-form map}. Lists are written `[T]`.

Sources, read from the upstream types:
* CLC: flatcar/container-linux-config-transpiler, config/types/{config,storage,files,systemd,
  verification}.go (commit e83ae11).
* Cluster API: kubernetes-sigs/cluster-api, api/bootstrap/kubeadm/v1beta2/{kubeadmconfig,
  kubeadmconfigtemplate,kubeadm}_types.go, api/core/v1beta2/{machinedeployment,machineset,
  machine}_types.go (commit ae7ff047db).
* CAPA: kubernetes-sigs/cluster-api-provider-aws, api/v1beta2/{awsmachine,awsmachinetemplate,
  types}_types.go (commit 2cf09d785).
"""

CLC = {
    "Config": {"version": None, "ignition": None, "storage": "Storage", "systemd": "Systemd",
               "networkd": None, "passwd": None, "etcd": None, "flannel": None, "update": None,
               "docker": None, "locksmith": None},
    "Storage": {"disks": None, "raid": None, "filesystems": None, "files": "[File]",
                "directories": None, "links": "[Link]"},
    "File": {"filesystem": None, "path": None, "user": None, "group": None, "mode": None,
             "contents": "FileContents", "overwrite": None, "append": None},
    "FileContents": {"remote": "Remote", "inline": None, "local": None},
    "Remote": {"url": None, "compression": None, "verification": "Verification"},
    "Verification": {"hash": "Hash"},
    "Hash": {"function": None, "sum": None},
    "Link": {"filesystem": None, "path": None, "user": None, "group": None, "hard": None,
             "target": None, "overwrite": None},
    "Systemd": {"units": "[SystemdUnit]"},
    "SystemdUnit": {"name": None, "enable": None, "enabled": None, "mask": None, "contents": None,
                    "dropins": "[SystemdUnitDropIn]"},
    "SystemdUnitDropIn": {"name": None, "contents": None},
}

_META = {"name": None, "namespace": None, "labels": None, "annotations": None}

CAPI = {
    "AWSMachineTemplate": {"apiVersion": None, "kind": None, "metadata": None,
                           "spec": "AWSMachineTemplateSpec"},
    "AWSMachineTemplateSpec": {"template": "AWSMachineTemplateResource"},
    "AWSMachineTemplateResource": {"metadata": None, "spec": "AWSMachineSpec"},
    "AWSMachineSpec": {k: None for k in (
        "providerID instanceID ami imageLookupFormat imageLookupOrg imageLookupBaseOS "
        "instanceType cpuOptions additionalTags iamInstanceProfile publicIP elasticIpPool "
        "additionalSecurityGroups subnet securityGroupOverrides sshKeyName rootVolume "
        "nonRootVolumes networkInterfaces networkInterfaceType assignPrimaryIPv6 "
        "uncompressedUserData cloudInit spotMarketOptions placementGroupName "
        "placementGroupPartition tenancy privateDnsName capacityReservationId marketType hostID "
        "hostAffinity dynamicHostAllocation capacityReservationPreference").split()}
    | {"instanceMetadataOptions": "InstanceMetadataOptions", "ignition": "Ignition"},
    "InstanceMetadataOptions": {"httpEndpoint": None, "httpProtocolIpv6": None,
                                "httpPutResponseHopLimit": None, "httpTokens": None,
                                "instanceMetadataTags": None},
    "Ignition": {"version": None, "storageType": None, "proxy": None, "tls": None},
    "KubeadmConfigTemplate": {"apiVersion": None, "kind": None, "metadata": None,
                              "spec": "KubeadmConfigTemplateSpec"},
    "KubeadmConfigTemplateSpec": {"template": "KubeadmConfigTemplateResource"},
    "KubeadmConfigTemplateResource": {"metadata": None, "spec": "KubeadmConfigSpec"},
    "KubeadmConfigSpec": {k: None for k in (
        "clusterConfiguration initConfiguration files diskSetup mounts bootCommands "
        "preKubeadmCommands postKubeadmCommands users ntp format verbosity").split()}
    | {"joinConfiguration": "JoinConfiguration", "ignition": "IgnitionSpec"},
    "IgnitionSpec": {"containerLinuxConfig": "ContainerLinuxConfig"},
    "ContainerLinuxConfig": {"additionalConfig": None, "strict": None},
    "JoinConfiguration": {"nodeRegistration": "NodeRegistrationOptions", "caCertPath": None,
                          "discovery": None, "controlPlane": None, "skipPhases": None,
                          "patches": None, "timeouts": None},
    "NodeRegistrationOptions": {"name": None, "criSocket": None, "taints": None,
                                "kubeletExtraArgs": "[Arg]", "ignorePreflightErrors": None,
                                "imagePullPolicy": None, "imagePullSerial": None},
    "Arg": {"name": None, "value": None},
    "MachineDeployment": {"apiVersion": None, "kind": None, "metadata": None,
                          "spec": "MachineDeploymentSpec"},
    "MachineDeploymentSpec": {"clusterName": None, "replicas": None,
                              "rollout": "MachineDeploymentRolloutSpec", "selector": None,
                              "template": "MachineTemplateSpec", "machineNaming": None,
                              "remediation": None, "deletion": None, "paused": None},
    "MachineDeploymentRolloutSpec": {"after": None, "strategy": "MachineDeploymentRolloutStrategy"},
    "MachineDeploymentRolloutStrategy": {"type": None,
                                         "rollingUpdate": "MachineDeploymentRolloutStrategyRollingUpdate"},
    "MachineDeploymentRolloutStrategyRollingUpdate": {"maxUnavailable": None, "maxSurge": None},
    "MachineTemplateSpec": {"metadata": None, "spec": "MachineSpec"},
    "MachineSpec": {"clusterName": None, "bootstrap": "Bootstrap",
                    "infrastructureRef": "ContractVersionedObjectReference", "version": None,
                    "providerID": None, "failureDomain": None, "minReadySeconds": None,
                    "readinessGates": None, "deletion": None, "taints": None},
    "Bootstrap": {"configRef": "ContractVersionedObjectReference", "dataSecretName": None},
    "ContractVersionedObjectReference": {"kind": None, "name": None, "apiGroup": None},
}


def unknown_fields(value, type_name, schema, path="$"):
    """Every key of `value` that `type_name` (in `schema`) does not declare, with its path."""
    out = []
    if type_name is None:
        return out
    if type_name.startswith("["):
        inner = type_name[1:-1]
        for i, item in enumerate(value or []):
            out += unknown_fields(item, inner, schema, f"{path}[{i}]")
        return out
    fields = schema[type_name]
    if not isinstance(value, dict):
        return [f"{path}: not an object"]
    for k, v in value.items():
        if k not in fields:
            out.append(f"{path}.{k} (not a field of {type_name})")
        else:
            out += unknown_fields(v, fields[k], schema, f"{path}.{k}")
    return out
