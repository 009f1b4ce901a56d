-- Orthanc routing for `medden serve`: every stable CT or MR series that did not come from medden is sent to the
-- modality "medden" (declared in DicomModalities); medden stores the denoised series back into Orthanc.
-- Load it with "LuaScripts": ["route-to-medden.lua"] in orthanc.json; "StableAge" sets how long Orthanc waits.

function CameFromMedden(instanceId)
   local names = ParseJson(RestApiGet('/instances/' .. instanceId .. '/metadata'))
   for _, name in ipairs(names) do
      if name == 'RemoteAET' then
         return RestApiGet('/instances/' .. instanceId .. '/metadata/RemoteAET') == 'MEDDEN'
      end
   end
   return false  -- uploaded through the REST API or the web interface
end

function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] ~= 'CT' and tags['Modality'] ~= 'MR' then
      return
   end
   local series = ParseJson(RestApiGet('/series/' .. seriesId))
   if CameFromMedden(series['Instances'][1]) then
      return  -- a derived series: never send it back (no loop)
   end
   print('medden: sending series ' .. seriesId .. ' to be denoised')
   RestApiPost('/modalities/medden/store', seriesId)  -- one association for the whole series
end
