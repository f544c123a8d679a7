#include <gtest/gtest.h>

#include "jobforge/job.hpp"

using namespace jobforge;

TEST(Job, IdsAreTimeOrderedVersion7Uuids) {
  const auto a = new_job_id();
  const auto b = new_job_id();
  EXPECT_EQ(a.size(), 36u);
  EXPECT_EQ(a[14], '7');
  EXPECT_LT(a, b);
}
