# The oasis br2-external tree: every package recipe under package/.
include $(sort $(wildcard $(BR2_EXTERNAL_OASIS_PATH)/package/*/*.mk))
