#!/bin/sh
# Entry point of the restore-validation CronJob: restore the newest bundle of $BACKUP_LOCATION,
# run every check with --gate, render the report when Node.js is there, verify and publish the
# evidence, and exit with the gate's status (the Job fails when the gate fails).
set -u
cd /suite

bundle="$(python -m caracal_restore.evidence newest-bundle "$BACKUP_LOCATION")" || exit 1
echo "restoring $bundle"

python -m pytest checks -n auto --gate \
    --bundle "$bundle" \
    --bundle-secrets /run/caracal/bundle-secrets \
    --age-identity /run/caracal/age/identity.txt \
    --signing-key /run/caracal/signing/evidence-signing.pem \
    --backup-location "$BACKUP_LOCATION"
status=$?

python -m caracal_restore.evidence report --history /var/lib/caracal-restore/history/history.jsonl
python -m caracal_restore.evidence verify reports/out --public-key /run/caracal/signing-public/evidence-signing.pub.pem
verified=$?

aws s3 cp --recursive reports/out \
    "$EVIDENCE_LOCATION/$(date -u +%Y/%m/%d)/${HOSTNAME:-restore-validation}/" || exit 1

[ "$status" -ne 0 ] && exit "$status"
exit "$verified"
